"""``python -m store init|seed``: migrate the schema (alembic upgrade head), add demo dealers."""

import argparse

from settings import Settings
from store.db import make_engine, migrate
from store.seed import seed_dealers


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m store", description=__doc__)
    parser.add_argument("command", choices=["init", "seed"])
    args = parser.parse_args()
    engine = make_engine(Settings().database_url_value)
    try:
        migrate(engine)
        if args.command == "seed":
            print(f"seeded {seed_dealers(engine)} dealer(s)")
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
