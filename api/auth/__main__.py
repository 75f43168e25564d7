"""``python -m api.auth token <customer_id> [--ttl SECONDS]``: print a customer token."""

import argparse
import sys
from collections.abc import Sequence
from datetime import timedelta

from api.auth.tokens import issue_customer_token
from settings import Settings

MAX_TOKEN_TTL = 366 * 24 * 3600


def _lifetime(text: str) -> int:
    seconds = int(text)
    if not 0 < seconds <= MAX_TOKEN_TTL:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_TOKEN_TTL} seconds")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m api.auth token <customer_id> [--ttl SECONDS]``: print a customer token,
    signed with the first of CUSTOMER_TOKEN_SECRETS."""
    parser = argparse.ArgumentParser(prog="python -m api.auth", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a customer's bearer token")
    token.add_argument("customer_id")
    token.add_argument(
        "--ttl",
        type=_lifetime,
        help="lifetime in seconds, 1 to a year (default: CUSTOMER_TOKEN_TTL_SECONDS)",
    )
    args = parser.parse_args(argv)

    settings = Settings()
    if not settings.customer_token_secrets:
        print("CUSTOMER_TOKEN_SECRETS is not set: no customer token can be issued", file=sys.stderr)
        return 2
    customer_id = args.customer_id.strip()
    if not customer_id:
        parser.error("customer_id is empty")
    ttl = timedelta(
        seconds=args.ttl if args.ttl is not None else settings.customer_token_ttl_seconds
    )
    secret = settings.customer_token_secrets[0].get_secret_value()
    print(issue_customer_token(secret, customer_id, ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
