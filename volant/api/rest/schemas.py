"""Request bodies: pydantic models that reject unknown fields and loose types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from volant.api.validation import Size, validate_model
from volant.model import (
    EventType,
    InvalidArgument,
    PortMapping,
    VMQuery,
    VMSortKey,
    VMStatus,
    VolumeMount,
    mappings_from,
)
from volant.model.publish import IPV4_PATTERN, PUBLISH_PATTERN, PUBLISH_RULE
from volant.model.validate import DNS_LABEL, PREFIX_RE
from volant.model.volumes import (
    MAX_PATH,
    MOUNT_PATH_PATTERN,
    VOLUME_NAME_PATTERN,
)

M = TypeVar("M", bound=BaseModel)


# The pattern is documented, not enforced by pydantic: the engine's own check answers with
# what a DNS label is, and both say the same thing.
Label = Annotated[StrictStr, Field(json_schema_extra={"pattern": DNS_LABEL})]


def _whole(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer; so does the API (but never "2" or true)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[StrictInt, BeforeValidator(_whole)]
# The pattern is documented, not enforced here: the engine's check says what a name is.
VolumeName = Annotated[StrictStr, Field(json_schema_extra={"pattern": VOLUME_NAME_PATTERN})]


class VolumeRequest(BaseModel):
    """One volume of a new VM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: VolumeName = Field(description="An existing volume")
    path: StrictStr = Field(
        description="Absolute path the guest mounts it at: not / or a system directory such "
        "as /proc, no '.' or '..', no spaces or ':'",
        max_length=MAX_PATH,
        json_schema_extra={"pattern": MOUNT_PATH_PATTERN},
    )
    read_only: StrictBool = Field(False, description="Mount it read-only")


class CreateVolumeRequest(BaseModel):
    """POST /api/v1/volumes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: VolumeName = Field(description="Volume name: a DNS label of at most 20 characters")
    size: Size


class ResizeVolumeRequest(BaseModel):
    """POST /api/v1/volumes/{volume}/resize: grow only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Size


class PortRequest(BaseModel):
    """One published port in its object form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host_addr: StrictStr | None = Field(
        None,
        pattern=IPV4_PATTERN,
        description="An IPv4 address of the host; none: every address (0.0.0.0)",
    )
    host_port: Whole = Field(ge=1, le=65535, description="Port on the host")
    vm_port: Whole = Field(ge=1, le=65535, description="Port of the VM")
    proto: Literal["tcp", "udp"] = Field("tcp", description="tcp or udp")


class CreateVMRequest(BaseModel):
    """POST /api/v1/vms. CPUs and memory default to the plugin's resources, then the host's
    vm.default_* settings; both must be within the host's vm.* limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Label = Field(description="VM name, a DNS label")
    plugin: Label = Field(description="Installed, enabled plugin the VM runs")
    cpu_cores: Whole | None = Field(None, ge=1, description="vCPUs")
    memory_mb: Whole | None = Field(None, ge=1, description="Guest RAM in MiB")
    kernel_args: StrictStr = Field(
        "",
        max_length=1024,
        description="Extra kernel arguments, printable ASCII (no volant.*, ip= or init=)",
        json_schema_extra={"pattern": "^[\\x20-\\x7e]*$"},
    )
    isolated: StrictBool = Field(
        False,
        description="Cut the VM off from every other guest (it still reaches the host and "
        "beyond); a plugin's network.isolated makes every VM of it so",
    )
    ephemeral: StrictBool = Field(
        False,
        description="A rootfs plugin's VM keeps its writes in a tmpfs, lost at stop, instead of "
        "on its own disk; a plugin's rootfs.ephemeral makes every VM of it so",
    )
    volumes: list[VolumeRequest] = Field(
        [],
        max_length=16,
        description="Volumes to mount in the guest; each used by one running VM at a time",
    )

    publish: list[Annotated[StrictStr, Field(pattern=PUBLISH_PATTERN)] | PortRequest] | None = (
        Field(
            None,
            max_length=64,
            description="Host ports forwarded to the VM while it runs, each "
            f"{PUBLISH_RULE} or an object; null: the plugin's network.publish, [] none",
        )
    )

    def volume_mounts(self) -> tuple[VolumeMount, ...]:
        return tuple(VolumeMount(v.name, v.path, v.read_only) for v in self.volumes)

    def port_mappings(self) -> tuple[PortMapping, ...] | None:
        """The published ports as the engine takes them (checked there)."""
        if self.publish is None:
            return None
        return mappings_from(
            p if isinstance(p, str) else p.model_dump(exclude_none=True) for p in self.publish
        )


SORT_PATTERN = "^-?(" + "|".join(key.value for key in VMSortKey) + ")$"
# Query parameters every route ignores: access control reads them before the handler runs.
ACCESS_PARAMS = frozenset({"api_key"})


class ListVMsQuery(BaseModel):
    """GET /api/v1/vms: filters, order and window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: VMStatus | None = Field(None, description="Only VMs in this status")
    plugin: str | None = Field(None, pattern=DNS_LABEL, description="Only VMs of this plugin")
    prefix: str = Field(
        "", pattern=f"^{PREFIX_RE.pattern}$", description="Only VMs whose name starts with this"
    )
    sort: str = Field(
        "name", pattern=SORT_PATTERN, description="Order by a column; a leading - reverses it"
    )
    limit: int | None = Field(None, ge=1, le=10_000, description="At most this many VMs")
    offset: int = Field(0, ge=0, le=1_000_000, description="Skip this many matches first")

    def to_query(self) -> VMQuery:
        descending = self.sort.startswith("-")
        return VMQuery(
            status=self.status,
            plugin=self.plugin,
            prefix=self.prefix,
            sort=VMSortKey(self.sort.removeprefix("-")),
            descending=descending,
            limit=self.limit,
            offset=self.offset,
        )


_TYPE_NAMES = "|".join(t.value for t in EventType)
EVENT_TYPES_PATTERN = f"^({_TYPE_NAMES})(,({_TYPE_NAMES}))*$"


class EventFilters(BaseModel):
    """?vm= and ?type= of the event routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vm: str | None = Field(
        None, description="Only events of this VM", json_schema_extra={"pattern": DNS_LABEL}
    )
    type: str | None = Field(
        None,
        description="Only events of these types, comma-separated (VM_CREATED,VM_DELETED)",
        json_schema_extra={"pattern": EVENT_TYPES_PATTERN},
    )

    @field_validator("type")
    @classmethod
    def _known_types(cls, value: str | None) -> str | None:
        if value is not None:
            unknown = [name for name in value.split(",") if name not in set(EventType)]
            if unknown:
                known = ", ".join(EventType)
                raise ValueError(f"unknown event type {unknown[0]!r} (known: {known})")
        return value

    def types(self) -> frozenset[EventType]:
        return frozenset(EventType(name) for name in (self.type or "").split(",") if name)


class EventsQuery(EventFilters):
    """GET /api/v1/events: persisted events after an id, oldest first."""

    after: int = Field(0, ge=0, le=2**63 - 1, description="Only events with a larger id")
    limit: int = Field(1000, ge=1, le=10_000, description="At most this many events")


class EventStreamQuery(EventFilters):
    """GET /api/v1/events/vms: the event stream."""

    after: int | None = Field(
        None,
        ge=0,
        description="Replay the events after this id first (0: every kept event); without it "
        "the stream starts now. A Last-Event-ID header wins over it.",
    )


class LogsQuery(BaseModel):
    """GET /api/v1/vms/{name}/logs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    follow: bool = Field(False, description="Stream new lines as Server-Sent Events")
    limit: int | None = Field(
        None, ge=1, le=10_000, description="Recent lines first (default 200, or 50 when following)"
    )


class InstallPluginRequest(BaseModel):
    """POST /api/v1/plugins: the manifest text (JSON or YAML) or a URL to fetch it from."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # Exactly one of the two; the engine says so in words when neither or both come.
        json_schema_extra={
            "oneOf": [
                {"required": ["manifest"], "properties": {"manifest": {"minLength": 1}}},
                {"required": ["url"], "properties": {"url": {"minLength": 1}}},
            ]
        },
    )

    manifest: StrictStr = Field("", description="Manifest text, JSON or YAML")
    url: StrictStr = Field(
        "",
        description="http(s) URL of the manifest",
        json_schema_extra={"pattern": "^(https?://.+)?$"},
    )
    signature: StrictStr | None = None
    origin: StrictStr = ""
    replace: StrictBool = False


def parse_body(model: type[M], body: Any) -> M:
    """Validate a decoded JSON body; the first problem becomes an InvalidArgument naming it."""
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return validate_model(model, body, unknown="field", whole="body")


def parse_query(model: type[M], query: Mapping[str, str]) -> M:
    """Validate query parameters (strings, converted by the model); same errors as bodies."""
    keys = [key for key, _value in query.items() if key not in ACCESS_PARAMS]
    if len(keys) != len(set(keys)):
        raise InvalidArgument("a query parameter is given more than once")
    return parse_body(model, {key: query[key] for key in keys})


class ConsoleQuery(BaseModel):
    """GET /ws/v1/vms/{name}/console."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    force: bool = Field(False, description="Take the console over from a client attached to it")


class ConsoleLogQuery(BaseModel):
    """GET /api/v1/vms/{name}/console/log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lines: int = Field(100, ge=1, le=10_000, description="How many of the last lines")
