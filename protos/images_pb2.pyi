from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthConfig(_message.Message):
    __slots__ = ("username", "password", "identity_token", "registry_token")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    identity_token: str
    registry_token: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., identity_token: _Optional[str] = ..., registry_token: _Optional[str] = ...) -> None: ...

class BuildOptions(_message.Message):
    __slots__ = ("dockerfile", "dockerfile_name", "tags", "build_args", "no_cache", "target", "network", "labels", "auths")
    class BuildArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AuthsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AuthConfig
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AuthConfig, _Mapping]] = ...) -> None: ...
    DOCKERFILE_FIELD_NUMBER: _ClassVar[int]
    DOCKERFILE_NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    BUILD_ARGS_FIELD_NUMBER: _ClassVar[int]
    NO_CACHE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AUTHS_FIELD_NUMBER: _ClassVar[int]
    dockerfile: str
    dockerfile_name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    build_args: _containers.ScalarMap[str, str]
    no_cache: bool
    target: str
    network: str
    labels: _containers.ScalarMap[str, str]
    auths: _containers.MessageMap[str, AuthConfig]
    def __init__(self, dockerfile: _Optional[str] = ..., dockerfile_name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., build_args: _Optional[_Mapping[str, str]] = ..., no_cache: _Optional[bool] = ..., target: _Optional[str] = ..., network: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., auths: _Optional[_Mapping[str, AuthConfig]] = ...) -> None: ...

class BuildInput(_message.Message):
    __slots__ = ("options", "context")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    options: BuildOptions
    context: bytes
    def __init__(self, options: _Optional[_Union[BuildOptions, _Mapping]] = ..., context: _Optional[bytes] = ...) -> None: ...

class BuildEvent(_message.Message):
    __slots__ = ("stream", "step", "total", "cached", "image_id")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    stream: str
    step: int
    total: int
    cached: bool
    image_id: str
    def __init__(self, stream: _Optional[str] = ..., step: _Optional[int] = ..., total: _Optional[int] = ..., cached: _Optional[bool] = ..., image_id: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class SaveRequest(_message.Message):
    __slots__ = ("refs", "format")
    REFS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedScalarFieldContainer[str]
    format: str
    def __init__(self, refs: _Optional[_Iterable[str]] = ..., format: _Optional[str] = ...) -> None: ...

class LoadedImage(_message.Message):
    __slots__ = ("id", "repo_tags")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPO_TAGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    repo_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., repo_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[LoadedImage]
    def __init__(self, images: _Optional[_Iterable[_Union[LoadedImage, _Mapping]]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("id", "created", "created_by", "size", "comment", "empty_layer")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    EMPTY_LAYER_FIELD_NUMBER: _ClassVar[int]
    id: str
    created: float
    created_by: str
    size: int
    comment: str
    empty_layer: bool
    def __init__(self, id: _Optional[str] = ..., created: _Optional[float] = ..., created_by: _Optional[str] = ..., size: _Optional[int] = ..., comment: _Optional[str] = ..., empty_layer: _Optional[bool] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ...) -> None: ...

class PruneRequest(_message.Message):
    __slots__ = ("all", "build_cache", "only_build_cache")
    ALL_FIELD_NUMBER: _ClassVar[int]
    BUILD_CACHE_FIELD_NUMBER: _ClassVar[int]
    ONLY_BUILD_CACHE_FIELD_NUMBER: _ClassVar[int]
    all: bool
    build_cache: bool
    only_build_cache: bool
    def __init__(self, all: _Optional[bool] = ..., build_cache: _Optional[bool] = ..., only_build_cache: _Optional[bool] = ...) -> None: ...

class PruneResponse(_message.Message):
    __slots__ = ("untagged", "deleted", "reclaimed")
    UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    RECLAIMED_FIELD_NUMBER: _ClassVar[int]
    untagged: _containers.RepeatedScalarFieldContainer[str]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    reclaimed: int
    def __init__(self, untagged: _Optional[_Iterable[str]] = ..., deleted: _Optional[_Iterable[str]] = ..., reclaimed: _Optional[int] = ...) -> None: ...

class SystemDfRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DfRow(_message.Message):
    __slots__ = ("type", "total", "active", "size", "reclaimable")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RECLAIMABLE_FIELD_NUMBER: _ClassVar[int]
    type: str
    total: int
    active: int
    size: int
    reclaimable: int
    def __init__(self, type: _Optional[str] = ..., total: _Optional[int] = ..., active: _Optional[int] = ..., size: _Optional[int] = ..., reclaimable: _Optional[int] = ...) -> None: ...

class DfImage(_message.Message):
    __slots__ = ("id", "repo_tags", "created", "size", "shared_size", "unique_size", "containers")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPO_TAGS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARED_SIZE_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    repo_tags: _containers.RepeatedScalarFieldContainer[str]
    created: float
    size: int
    shared_size: int
    unique_size: int
    containers: int
    def __init__(self, id: _Optional[str] = ..., repo_tags: _Optional[_Iterable[str]] = ..., created: _Optional[float] = ..., size: _Optional[int] = ..., shared_size: _Optional[int] = ..., unique_size: _Optional[int] = ..., containers: _Optional[int] = ...) -> None: ...

class SystemDfResponse(_message.Message):
    __slots__ = ("rows", "images")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[DfRow]
    images: _containers.RepeatedCompositeFieldContainer[DfImage]
    def __init__(self, rows: _Optional[_Iterable[_Union[DfRow, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[DfImage, _Mapping]]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("ref", "auth")
    REF_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ref: str
    auth: AuthConfig
    def __init__(self, ref: _Optional[str] = ..., auth: _Optional[_Union[AuthConfig, _Mapping]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("ref", "auth")
    REF_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ref: str
    auth: AuthConfig
    def __init__(self, ref: _Optional[str] = ..., auth: _Optional[_Union[AuthConfig, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("id", "status", "current", "total", "image_id", "digest", "reference")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    current: int
    total: int
    image_id: str
    digest: str
    reference: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., current: _Optional[int] = ..., total: _Optional[int] = ..., image_id: _Optional[str] = ..., digest: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("registry", "auth")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    registry: str
    auth: AuthConfig
    def __init__(self, registry: _Optional[str] = ..., auth: _Optional[_Union[AuthConfig, _Mapping]] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("status", "identity_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: str
    identity_token: str
    def __init__(self, status: _Optional[str] = ..., identity_token: _Optional[str] = ...) -> None: ...
