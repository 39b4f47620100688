"""The domain error hierarchy (CONTRACT.md, "Core API" error table; the store's codes, "Store API").

Each error carries what the HTTP edge needs to render it and nothing about HTTP itself beyond the
status number: `code` (machine-readable, stable), `title` (the contract's exact `error` string),
`message` (a sentence for people) and `details` (a JSON object). An error with a fixed sentence has
a `template` (`str.format` fields) and keeps the values it was filled from in `params`, ids as
integers, so that the edge writes each id as its surface names it (`42` in the core API, `prod_042`
in the store API) from the value, never by editing the sentence. `api/errors.py` alone turns an error
into the core envelope `{"error", "message", "code", "details", "request_id"}` or the store envelope,
and `example()` is the instance the OpenAPI document shows. How to add an error: docs/errors.md.
"""

from __future__ import annotations

from decimal import Decimal
from string import Formatter
from typing import Any, ClassVar

#: Keys of `params` and `details` holding ids that the store API writes as public ids (`prod_001`).
ID_KINDS: dict[str, str] = {"product_id": "product", "order_id": "order"}

#: Error classes with a fixed sentence, by code; None for a code that several such classes share.
_TEMPLATED: dict[str, type[DomainError] | None] = {}


class DomainError(Exception):
    """Base of every error raised on purpose. `message` is the sentence as the core API writes it
    (default: `template` filled from `params`), `details` the envelope's JSON object, `params` the
    values `template` was filled from (empty when the instance was given its sentence)."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "INVALID_REQUEST"
    title: ClassVar[str] = "Invalid input"
    #: The sentence as a `str.format` template over `params`; None when each instance is given one.
    template: ClassVar[str | None] = None
    #: The name of `example()` among the OpenAPI document's examples (default: the code, lower case).
    example_name: ClassVar[str | None] = None

    def __init__(
        self,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        *,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.details: dict[str, Any] = details or {}
        self.params: dict[str, Any] = params or {}
        self.message = self.sentence(**self.params) if message is None else message
        super().__init__(self.message)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("template"):
            _TEMPLATED[cls.code] = None if cls.code in _TEMPLATED else cls

    @classmethod
    def sentence(cls, **params: Any) -> str:
        """`template` filled from `params`."""
        if cls.template is None:
            raise TypeError(f"{cls.__name__} has no template")
        return cls.template.format(**params)

    @classmethod
    def example(cls) -> DomainError:
        """The instance the OpenAPI document shows for this class (a subclass whose template has no
        fields: its one sentence)."""
        if cls.template is not None and not template_fields(cls.template):
            return cls()
        return cls("The request is invalid.")

    @classmethod
    def example_key(cls) -> str:
        """The example's name in the OpenAPI document (`product_not_found`)."""
        return cls.example_name or cls.code.lower()

    def to_dict(self) -> dict[str, Any]:
        """The error as stored on a rejected order: `{code, error, message, details}`, and `params`
        with the values of the sentence that `details` do not carry (`{"name": "Product A"}`), so that
        the store API can write the sentence again from `details` and `params`."""
        out: dict[str, Any] = {
            "code": self.code,
            "error": self.title,
            "message": self.message,
            "details": self.details,
        }
        extra = {key: value for key, value in self.params.items() if key not in self.details}
        if extra:
            out["params"] = extra
        return out


def templated_class(code: str) -> type[DomainError] | None:
    """The one error class with a fixed sentence whose code is `code` (a stored error's), if any."""
    return _TEMPLATED.get(code)


def template_fields(template: str) -> set[str]:
    """The `str.format` field names of `template`."""
    return {name for _, name, _, _ in Formatter().parse(template) if name}


class InvalidInput(DomainError):
    """400 `Invalid input`: a request the domain refuses (validation failures are rendered by the
    edge from pydantic's errors, `api.errors.validation_error`)."""

    status = 400
    code = "INVALID_REQUEST"
    title = "Invalid input"
    example_name = "invalid_input"


class NotFound(DomainError):
    status = 404
    code = "NOT_FOUND"
    title = "Not found"

    @classmethod
    def example(cls) -> DomainError:
        return cls("No resource at this path.")


class ProductNotFound(NotFound):
    code = "PRODUCT_NOT_FOUND"
    title = "Product not found"
    template = "The product with ID {product_id} does not exist."

    def __init__(self, product_id: int) -> None:
        params = {"product_id": product_id}
        super().__init__(self.sentence(**params), dict(params), params=params)
        self.product_id = product_id

    @classmethod
    def example(cls) -> DomainError:
        return cls(42)


class OrderNotFound(NotFound):
    code = "ORDER_NOT_FOUND"
    title = "Order not found"
    template = "The order with ID {order_id} does not exist."

    def __init__(self, order_id: int) -> None:
        params = {"order_id": order_id}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls(7)


class UserNotFound(NotFound):
    code = "USER_NOT_FOUND"
    title = "User not found"
    template = "The user with ID {user_id} does not exist."

    def __init__(self, user_id: int) -> None:
        params = {"user_id": user_id}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls(3)


class InsufficientStock(DomainError):
    status = 400
    code = "INSUFFICIENT_STOCK"
    title = "Insufficient stock"
    template = "There are only {available} units of {name} in stock, but you requested {requested}."

    def __init__(self, product_id: int, name: str, available: int, requested: int) -> None:
        params = {"product_id": product_id, "name": name, "available": available, "requested": requested}
        super().__init__(
            self.sentence(**params),
            {"product_id": product_id, "available": available, "requested": requested},
            params=params,
        )

    @classmethod
    def example(cls) -> DomainError:
        return cls(1, "Product A", 5, 10)


class ProductDiscontinued(DomainError):
    status = 400
    code = "PRODUCT_DISCONTINUED"
    title = "Product discontinued"
    template = "The product {name} (ID {product_id}) is discontinued and cannot be ordered."
    example_name = "discontinued"

    def __init__(self, product_id: int, name: str) -> None:
        params = {"product_id": product_id, "name": name}
        super().__init__(self.sentence(**params), {"product_id": product_id}, params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls(1, "Product A")


class InvalidStatus(DomainError):
    status = 400
    code = "INVALID_STATUS"
    title = "Invalid status"
    template = "Order status must be either 'Pending' or 'Completed'."

    def __init__(self, value: object) -> None:
        super().__init__(self.sentence(), {"status": value}, params={"status": value})

    @classmethod
    def example(cls) -> DomainError:
        return cls("Shipped")


class InvalidStatusTransition(DomainError):
    status = 409
    code = "INVALID_STATUS_TRANSITION"
    title = "Invalid status transition"
    template = "Order {order_id} is {current} and cannot become {requested}."
    example_name = "invalid_transition"

    def __init__(self, order_id: int, current: str, target: str) -> None:
        params = {"order_id": order_id, "current": current, "requested": target}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls(7, "rejected", "completed")


class Unauthorized(DomainError):
    """No, unreadable or wrong credentials. `challenge` is the `WWW-Authenticate` value (RFC 9110,
    section 11.6.1) the response carries."""

    status = 401
    code = "UNAUTHORIZED"
    title = "Unauthorized"
    challenge: ClassVar[str] = 'Basic realm="orderflow"'

    @classmethod
    def example(cls) -> DomainError:
        """A subclass with a template: its own; otherwise this class with `CredentialsRequired`'s sentence."""
        if cls.template is None:
            return cls(CredentialsRequired.sentence())
        return super().example()


class CredentialsRequired(Unauthorized):
    """401: no `Authorization` header where credentials are required (CONTRACT.md, "Users and
    authentication")."""

    template = "Authentication required: send Basic credentials or a Bearer token."
    example_name = "unauthorized"


class BasicCredentialsRequired(Unauthorized):
    """401: `POST /login` without HTTP Basic credentials (none, or another scheme such as Bearer):
    only a username and password are exchanged for a token (CONTRACT.md, "Users and
    authentication")."""

    template = "Log in with Basic credentials: Authorization: Basic base64(username:password)."
    example_name = "unauthorized"


class WrongCredentials(Unauthorized):
    """401: HTTP Basic with a wrong password or an unknown username (one sentence for both)."""

    template = "The username or password is wrong."
    example_name = "wrong_password"


class MalformedCredentials(Unauthorized):
    """401: HTTP Basic credentials that are not base64 of UTF-8 `username:password` with a non-empty
    username (RFC 7617, section 2)."""

    template = "The Basic credentials must be base64 of 'username:password'."
    example_name = "malformed_credentials"


class UnsupportedScheme(Unauthorized):
    """401: an `Authorization` scheme other than Basic or Bearer (RFC 9110, section 11.6.2); `scheme`
    is the one sent, cut to 20 characters."""

    template = "Unsupported authorization scheme '{scheme}': use Basic or Bearer."
    example_name = "unsupported_scheme"

    def __init__(self, scheme: str) -> None:
        params = {"scheme": scheme[:20]}
        super().__init__(self.sentence(**params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls("Digest")


class InvalidToken(Unauthorized):
    """A bearer token that is malformed, tampered, expired, unsigned or signed with another key.
    Answered with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750, section 3)."""

    challenge = 'Bearer error="invalid_token"'


class TokenExpired(InvalidToken):
    """Signed with this key, but `exp` has passed (RFC 7519, section 4.1.4)."""

    template = "The access token has expired; log in again."
    example_name = "invalid_token"


class MalformedToken(InvalidToken):
    """Not a JWT, tampered, signed with another key or algorithm, or a claim missing or of the wrong
    shape."""

    template = "The access token is invalid."
    example_name = "malformed_token"


class TokenSubjectInvalid(InvalidToken):
    """Validly signed, but `sub` is not a positive int64 written in decimal digits."""

    template = "The access token is invalid: its subject is not a user id."
    example_name = "token_subject_invalid"


class TokenUserGone(InvalidToken):
    """Validly signed, but its user no longer exists."""

    template = "The user of this access token no longer exists."
    example_name = "token_user_gone"


class TokenPasswordChanged(InvalidToken):
    """Validly signed, but its user changed their password after the token's `iat`."""

    template = "The password was changed after this access token was issued; log in again."
    example_name = "token_password_changed"


class EmptyBearerToken(InvalidToken):
    """401: `Authorization: Bearer` with no token. Answered like every refused bearer token, with
    `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750, section 3); the other token refusals
    are the other subclasses of `InvalidToken`."""

    template = "The Bearer token is empty."
    example_name = "empty_token"


class Forbidden(DomainError):
    status = 403
    code = "FORBIDDEN"
    title = "Forbidden"

    @classmethod
    def example(cls) -> DomainError:
        return RoleRequired.staff("customer")


class RoleRequired(Forbidden):
    """403: the caller's role is not one the action needs (CONTRACT.md, "Users and authentication")."""

    template = "This action needs the {roles} role."

    def __init__(self, roles: str, role: str) -> None:
        super().__init__(self.sentence(roles=roles), {"role": role}, params={"roles": roles, "role": role})

    @classmethod
    def staff(cls, role: str) -> RoleRequired:
        """The 403 of `api.deps.require_staff`: a manager or an admin is needed, `role` is the caller's."""
        return cls("manager or admin", role)

    @classmethod
    def admin(cls, role: str) -> RoleRequired:
        """The 403 of `api.deps.require_admin`: an admin is needed, `role` is the caller's."""
        return cls("admin", role)

    @classmethod
    def example(cls) -> DomainError:
        return cls.staff("customer")


class RoleGrantForbidden(Forbidden):
    """403: only an admin may create a user with a role other than `customer`."""

    template = "Only an admin can create a user with the role '{role}'."
    example_name = "forbidden_role"

    def __init__(self, role: str) -> None:
        params = {"role": role}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls("manager")


class RoleChangeForbidden(Forbidden):
    """403: only an admin may change a user's role, their own included (CONTRACT.md, "Users and
    authentication")."""

    template = "Only an admin can change a user's role."
    example_name = "forbidden_role_change"

    def __init__(self, role: str) -> None:
        super().__init__(self.sentence(), {"role": role}, params={"role": role})

    @classmethod
    def example(cls) -> DomainError:
        return cls("admin")


class ManagerIdGrantForbidden(Forbidden):
    """403: only an admin may bind (or unbind, `manager_id` None) a store `manager_id` to an account."""

    template = "Only an admin can set a user's manager id."
    example_name = "forbidden_manager_id"

    def __init__(self, manager_id: str | None) -> None:
        super().__init__(self.sentence(), {"manager_id": manager_id}, params={"manager_id": manager_id})

    @classmethod
    def example(cls) -> DomainError:
        return cls("mgr_123")


class StoreRoleRequired(Forbidden):
    """403 (store API with `STORE_REQUIRE_AUTH=true`): a customer, whose role may not use the store API."""

    template = "The store API needs the manager or admin role."
    example_name = "forbidden_role"

    def __init__(self, role: str) -> None:
        super().__init__(self.sentence(), {"role": role}, params={"role": role})

    @classmethod
    def example(cls) -> DomainError:
        return cls("customer")


class ManagerUnbound(Forbidden):
    """403 (store API with `STORE_REQUIRE_AUTH=true`): a manager whose account has no `manager_id`
    bound; `details.bound_manager_id` is null."""

    template = "Your account is not bound to a manager_id; an admin can bind one."
    example_name = "forbidden_unbound"

    def __init__(self, manager_id: str | None) -> None:
        details = {"manager_id": manager_id, "bound_manager_id": None}
        super().__init__(self.sentence(), details, params=dict(details))

    @classmethod
    def example(cls) -> DomainError:
        return cls("mgr_123")


class ManagerRoleRequired(InvalidInput):
    """400: a `manager_id` bound to a user whose role (after the change) is not `manager`."""

    template = (
        "A manager id can only be bound to a user with the role 'manager'; this user's role is '{role}'."
    )
    example_name = "manager_id_needs_manager"

    def __init__(self, manager_id: str, role: str) -> None:
        params = {"manager_id": manager_id, "role": role}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls("mgr_123", "customer")


class StockLimitExceeded(InvalidInput):
    """400: an increment that would take a product's stock past `max_stock` (the `products.stock`
    column's bound); the stock is left unchanged."""

    template = "Stock cannot exceed {max_stock} units: {name} has {stock} and you requested {requested} more."
    example_name = "stock_limit"

    def __init__(self, product_id: int, name: str, stock: int, requested: int, max_stock: int) -> None:
        params = {
            "product_id": product_id,
            "name": name,
            "stock": stock,
            "requested": requested,
            "max_stock": max_stock,
        }
        details = {"product_id": product_id, "stock": stock, "requested": requested}
        super().__init__(self.sentence(**params), details, params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls(1, "Product A", 2147483000, 1000, 2147483647)


class UnknownOrderStatus(InvalidInput):
    """400: a `status` filter that names no order status (`allowed` lists them, comma-separated)."""

    template = "Order status must be one of: {allowed}."
    example_name = "unknown_status"

    def __init__(self, value: object, allowed: str) -> None:
        super().__init__(
            self.sentence(allowed=allowed), {"status": value}, params={"status": value, "allowed": allowed}
        )

    @classmethod
    def example(cls) -> DomainError:
        return cls("shipped", "pending, confirmed, completed, rejected, cancelled, failed")


class OrderTotalTooLarge(InvalidInput):
    """400: an order whose total exceeds the largest accepted total (`orders.total_price
    NUMERIC(14, 2)`); both amounts are strings with two decimals."""

    template = "The order total {total_price} exceeds the largest accepted total {max_total_price}."
    example_name = "total_too_large"

    def __init__(self, total_price: Decimal, max_total_price: Decimal) -> None:
        params = {"total_price": f"{total_price:.2f}", "max_total_price": str(max_total_price)}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls(Decimal("1000000000000.00"), Decimal("999999999999.99"))


class Conflict(DomainError):
    status = 409
    code = "CONFLICT"
    title = "Conflict"

    @classmethod
    def example(cls) -> DomainError:
        return IdempotencyKeyReused("abc")


class IdempotencyKeyReused(Conflict):
    """409: an `Idempotency-Key` sent again with another body (CONTRACT.md, "Orders")."""

    template = "The idempotency key '{idempotency_key}' was already used with a different request."

    def __init__(self, key: str) -> None:
        params = {"idempotency_key": key}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls("abc")


class ManagerIdTaken(Conflict):
    """409: a `manager_id` that is bound to another user already (one id, one account)."""

    template = "The manager id '{manager_id}' is already bound to another user."
    example_name = "manager_id_taken"

    def __init__(self, manager_id: str | None) -> None:
        params = {"manager_id": manager_id}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls("mgr_123")


class UsernameTaken(Conflict):
    template = "The username '{username}' is already taken."
    example_name = "username_taken"

    def __init__(self, username: str) -> None:
        params = {"username": username}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls("alice")


class LastAdmin(Conflict):
    template = "The last admin cannot lose the admin role."
    example_name = "last_admin"

    def __init__(self, user_id: int) -> None:
        super().__init__(self.sentence(), {"user_id": user_id}, params={"user_id": user_id})

    @classmethod
    def example(cls) -> DomainError:
        return cls(1)


class ProcessingFailed(DomainError):
    """An order that `failed` (a transient database fault outlived the worker's retries, or processing
    raised a bug; no stock is held). Never raised: it is only stored on the order (`to_dict()`), and the
    store API answers it as 500 `INTERNAL_ERROR` (`api.errors.rejection_response`). `reason` is the
    exception's class name (`OperationalError`)."""

    status = 500
    code = "PROCESSING_FAILED"
    title = "Processing failed"
    template = (
        "The order could not be processed because of a technical fault; no stock was reserved. "
        "Please place it again."
    )
    example_name = "failed"

    def __init__(self, reason: str) -> None:
        super().__init__(self.sentence(), {"reason": reason}, params={"reason": reason})

    @classmethod
    def example(cls) -> DomainError:
        return cls("OperationalError")


# --- the store API's own refusals (CONTRACT.md, "Store API"; fields named as the store names them) ---


class DuplicateInBatch(InvalidInput):
    """400: two items of one `POST /api/inventory/products` batch name the same product."""

    template = "{field}: '{value}' is already given by {duplicate_of}; name each product once per batch."
    example_name = "duplicate_in_batch"

    def __init__(self, field: str, value: str, duplicate_of: str) -> None:
        params = {"field": field, "value": value, "duplicate_of": duplicate_of}
        super().__init__(
            self.sentence(**params), {"field": field, "duplicate_of": duplicate_of}, params=params
        )

    @classmethod
    def example(cls) -> DomainError:
        return cls("products[1].name", "Product A", "products[0]")


class ProductNameTaken(InvalidInput):
    """400: an update would give a product the name of another of the manager's products."""

    template = "{field}: {manager_id} already has a product named '{name}' ({product_id})."
    example_name = "product_name_taken"

    def __init__(self, field: str, manager_id: str, name: str, product_id: int) -> None:
        params = {"field": field, "manager_id": manager_id, "name": name, "product_id": product_id}
        super().__init__(self.sentence(**params), {"field": field, "product_id": product_id}, params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls("products[1].name", "mgr_123", "Product A", 1)


class ManagerMismatch(Forbidden):
    """403 (store API with `STORE_REQUIRE_AUTH=true`): a manager acting for another `manager_id`
    than the one bound to their account."""

    template = "Your account may act for manager_id '{bound_manager_id}' only."
    example_name = "forbidden"

    def __init__(self, manager_id: str | None, bound_manager_id: str) -> None:
        params = {"manager_id": manager_id, "bound_manager_id": bound_manager_id}
        super().__init__(self.sentence(**params), dict(params), params=params)

    @classmethod
    def example(cls) -> DomainError:
        return cls("mgr_999", "mgr_123")
