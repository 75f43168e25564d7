"""The OpenAPI document's account of auth, in the mode the API runs in."""

from typing import Any

from fastapi import FastAPI

from settings import Settings


def document_security(app: FastAPI, settings: Settings) -> None:
    """In ``AUTH_MODE=dev`` no call needs a credential: say so in the OpenAPI document too
    (a documented scheme would tell clients, and schema fuzzers, that calls without it fail).
    """
    if settings.auth_mode != "dev":
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operation in (op for ops in schema["paths"].values() for op in ops.values()):
                operation.pop("security", None)
                for code in ("401", "403"):
                    operation.get("responses", {}).pop(code, None)
            schema.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
