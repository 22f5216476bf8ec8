"""Every HTTP body and query, in simplebank's proto field names: the one source of the contract.

Input messages accept the proto names and their camelCase forms and ignore unknown fields, as
grpc-gateway does; their constraints (lengths, patterns, bounds) are declared once on the
field, and both validation and the OpenAPI document (openapi.py) read them from there. Answers
are models too: a route returns one, it is serialised by the model, and the document describes
it from the same class. Answers use the proto (snake_case) names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from importlib.resources import files
from typing import Annotated, Any, Literal, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from verimail_api.passwords import normalize
from verimail_shared.errors import FieldViolation, InvalidArgument

# ---------------------------------------------------------------- field types of the inputs

USERNAME_PATTERN = r"^[a-z0-9_]+$"
# The words for a pattern that does not match; the pattern itself is the field's.
PATTERN_MESSAGES = {USERNAME_PATTERN: "must contain only lowercase letters, digits, or underscore"}
MAX_ID = 2**63 - 1  # PostgreSQL's bigint


def letters_or_spaces(value: str) -> str:
    if not all(char.isalpha() or char == " " for char in value) or not value.strip():
        raise ValueError("must contain only letters or spaces")
    return value


def email_address(value: str) -> str:
    """The address as email-validator normalises it (the domain in lower case)."""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address: {exc}") from None


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords (package data; the file names its source)."""
    text = (files("verimail_api") / "data" / "common_passwords.txt").read_text()
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def check_password(value: str) -> str:
    """NIST SP 800-63B 5.1.1.2: a blocklist, no composition rules (the length is the field's).

    Compared after NFKC and case folding, as hashing sees it: fullwidth or uppercase is no way
    out."""
    if normalize(value).casefold() in common_passwords():
        raise ValueError("is too common: choose one that is not on lists of leaked passwords")
    return value


Username = Annotated[str, Field(min_length=3, max_length=100, pattern=USERNAME_PATTERN)]
FullName = Annotated[str, Field(min_length=3, max_length=100), AfterValidator(letters_or_spaces)]
Email = Annotated[
    str,
    Field(min_length=3, max_length=200, json_schema_extra={"format": "email"}),
    AfterValidator(email_address),
]
Password = Annotated[str, Field(min_length=8, max_length=64), AfterValidator(check_password)]
SecretCode = Annotated[str, Field(min_length=32, max_length=128)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


# ---------------------------------------------------------------- input messages


class InputMessage(BaseModel):
    """A request body or query as grpc-gateway reads one: proto names or camelCase, unknown
    fields ignored, no type coercion (a number is not a string)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        strict=True,
        frozen=True,
    )


class CreateUserRequest(InputMessage):
    username: Username
    full_name: FullName
    email: Email
    password: Password

    def __repr__(self) -> str:
        # Never let the password reach a log line through repr().
        return f"CreateUserRequest(username={self.username!r}, email={self.email!r})"


class ResendVerifyEmailRequest(InputMessage):
    email: Email


class VerifyEmailRequest(InputMessage):
    """The verification link's query (strings, hence no strict types)."""

    model_config = ConfigDict(strict=False)

    email_id: Id
    secret_code: SecretCode


class DeadTasksQuery(InputMessage):
    """`GET /v1/admin/dead_tasks`: newest first, at most `limit`, re-queued ones if asked."""

    model_config = ConfigDict(strict=False)

    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    include_requeued: bool = False


_USERNAME: TypeAdapter[str] = TypeAdapter(Username)


def check_username(value: str) -> str:
    """`value` if it is a valid username; else ValueError (pydantic's ValidationError)."""
    return _USERNAME.validate_python(value, strict=True)


M = TypeVar("M", bound=InputMessage)


def parse(model: type[M], data: Any) -> M:
    """Validate `data`, reporting every bad field at once as InvalidArgument."""
    if not isinstance(data, dict):
        raise InvalidArgument([FieldViolation("body", "must be a JSON object")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(violations(exc, model)) from None


def violations(exc: ValidationError, model: type[BaseModel]) -> list[FieldViolation]:
    names = {field.alias or name: name for name, field in model.model_fields.items()}
    result = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else "body"
        name = names.get(field, field)
        result.append(FieldViolation(name, _describe(error, model, name)))
    return result


def _describe(error: Any, model: type[BaseModel], name: str) -> str:
    """simplebank's words for a violation, with the limits read from the field itself."""
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "string_type":
        return "must be a string"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return "must be an integer"
    if kind in {"string_too_short", "string_too_long"}:
        low, high = _bounds(model, name, "min_length", "max_length")
        return f"must contain from {low}-{high} characters"
    if kind == "string_pattern_mismatch":
        return PATTERN_MESSAGES.get(error["ctx"]["pattern"], "has the wrong format")
    if kind in {"greater_than_equal", "less_than_equal"}:
        low, high = _bounds(model, name, "ge", "le")
        return f"must be an integer from {low} to {high}"
    return str(error["msg"]).removeprefix("Value error, ")


def _bounds(model: type[BaseModel], name: str, low: str, high: str) -> tuple[object, object]:
    """The field's constraints named `low` and `high` (min_length/max_length, or ge/le)."""
    found = {
        attribute: getattr(item, attribute)
        for item in model.model_fields[name].metadata
        for attribute in (low, high)
        if hasattr(item, attribute)
    }
    return found.get(low), found.get(high)


# ---------------------------------------------------------------- answers


def rfc3339(moment: datetime) -> str:
    """protobuf's Timestamp JSON form: UTC, 'Z', fractional digits only when there are some."""
    text = moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


Timestamp = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]


class Answer(BaseModel):
    """A response body. Built from a row's attributes; every field is always written."""

    model_config = ConfigDict(
        from_attributes=True, frozen=True, json_schema_serialization_defaults_required=True
    )

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, by_alias=True)


class User(Answer):
    """simplebank's pb.User."""

    username: str
    full_name: str
    email: str
    is_email_verified: bool
    password_changed_at: Timestamp
    created_at: Timestamp


class CreateUserResponse(Answer):
    user: User


class VerifyEmailResponse(Answer):
    is_verified: bool


class ResendVerifyEmailResponse(Answer):
    """Empty: the same answer whether or not the address has an account."""


class BadRequestFieldViolation(Answer):
    field: str
    description: str


class BadRequest(Answer):
    """google.rpc.BadRequest, as a google.protobuf.Any in a Status's details."""

    type: Literal["type.googleapis.com/google.rpc.BadRequest"] = Field(
        default="type.googleapis.com/google.rpc.BadRequest", alias="@type"
    )
    field_violations: list[BadRequestFieldViolation]


class Status(Answer):
    """google.rpc.Status, as grpc-gateway writes it: every error answer."""

    code: int = Field(description="a google.rpc.Code")
    message: str
    details: list[BadRequest] = []


class Health(Answer):
    status: Literal["ok"] = "ok"


class Readiness(Answer):
    """Whether PostgreSQL and Redis answer: "ok", or the error each gave."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


class DeadTask(Answer):
    """A task that failed for good (a row of dead_tasks)."""

    id: int
    job_id: str
    task: str
    queue: str
    payload: dict[str, Any]
    tries: int
    last_error: str
    failed_at: Timestamp | None
    requeued_at: Timestamp | None


class DeadTasksResponse(Answer):
    """Dead letters, newest first."""

    dead_tasks: list[DeadTask]


class DeadTaskResponse(Answer):
    dead_task: DeadTask


class QueueCounts(Answer):
    """One queue: ready (due, waiting), deferred (due later), in progress, dead."""

    name: str
    ready: int
    deferred: int
    in_progress: int
    dead: int


class QueuesResponse(Answer):
    queues: list[QueueCounts]
