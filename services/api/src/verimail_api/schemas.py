"""HTTP request and response bodies, in simplebank's proto field names.

Inputs accept the proto names and their camelCase forms and ignore unknown fields, as
grpc-gateway does; outputs use the proto (snake_case) names.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from importlib.resources import files
from typing import Any, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from verimail_api.passwords import normalize
from verimail_shared.errors import FieldViolation, InvalidArgument
from verimail_shared.tables import User, loaded

USERNAME = re.compile(r"[a-z0-9_]+")


def check_length(value: str, low: int, high: int) -> str:
    if not low <= len(value) <= high:
        raise ValueError(f"must contain from {low}-{high} characters")
    return value


def check_username(value: str) -> str:
    check_length(value, 3, 100)
    if not USERNAME.fullmatch(value):
        raise ValueError("must contain only lowercase letters, digits, or underscore")
    return value


def check_full_name(value: str) -> str:
    check_length(value, 3, 100)
    if not all(char.isalpha() or char == " " for char in value) or not value.strip():
        raise ValueError("must contain only letters or spaces")
    return value


def check_email(value: str) -> str:
    check_length(value, 3, 200)
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
    # NIST SP 800-63B 5.1.1.2: length limits and a blocklist, no composition rules.
    check_length(value, 8, 64)
    # After NFKC and case folding, as hashing sees it: fullwidth or uppercase is no way out.
    if normalize(value).casefold() in common_passwords():
        raise ValueError("is too common: choose one that is not on lists of leaked passwords")
    return value


def check_secret_code(value: str) -> str:
    return check_length(value, 32, 128)


class Request(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        strict=True,
        frozen=True,
    )


# What the validators below check, for the OpenAPI document (they give the error messages).
USERNAME_SCHEMA: JsonDict = {"minLength": 3, "maxLength": 100, "pattern": "^[a-z0-9_]+$"}
FULL_NAME_SCHEMA: JsonDict = {"minLength": 3, "maxLength": 100}
EMAIL_SCHEMA: JsonDict = {"format": "email", "maxLength": 200}
PASSWORD_SCHEMA: JsonDict = {"minLength": 8, "maxLength": 64}


class CreateUserRequest(Request):
    username: str = Field(json_schema_extra=USERNAME_SCHEMA)
    full_name: str = Field(json_schema_extra=FULL_NAME_SCHEMA)
    email: str = Field(json_schema_extra=EMAIL_SCHEMA)
    password: str = Field(json_schema_extra=PASSWORD_SCHEMA)

    _username = field_validator("username")(check_username)
    _full_name = field_validator("full_name")(check_full_name)
    _email = field_validator("email")(check_email)
    _password = field_validator("password")(check_password)

    def __repr__(self) -> str:
        # Never let the password reach a log line through repr().
        return f"CreateUserRequest(username={self.username!r}, email={self.email!r})"


class ResendVerifyEmailRequest(Request):
    email: str = Field(json_schema_extra=EMAIL_SCHEMA)

    _email = field_validator("email")(check_email)


class VerifyEmailRequest(Request):
    model_config = ConfigDict(strict=False)

    email_id: int
    secret_code: str

    @field_validator("email_id")
    @classmethod
    def _positive(cls, value: int) -> int:
        if not 0 < value < 2**63:
            raise ValueError("must be a positive integer")
        return value

    _secret_code = field_validator("secret_code")(check_secret_code)


M = TypeVar("M", bound=Request)


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
        result.append(FieldViolation(names.get(field, field), _describe(error)))
    return result


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind in {"string_type", "int_type", "int_parsing"}:
        return "must be a string" if kind == "string_type" else "must be an integer"
    return str(error["msg"]).removeprefix("Value error, ")


def rfc3339(moment: datetime) -> str:
    """protobuf's Timestamp JSON form: UTC, 'Z', fractional digits only when there are some."""
    text = moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def user_body(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "full_name": user.full_name,
        "email": user.email,
        "is_email_verified": user.is_email_verified,
        "password_changed_at": rfc3339(loaded(user.password_changed_at)),
        "created_at": rfc3339(loaded(user.created_at)),
    }
