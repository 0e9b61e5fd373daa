"""`python3 -m volant_agent`: how volant-init starts the agent."""

import sys

from volant_agent.main import main

sys.exit(main())
