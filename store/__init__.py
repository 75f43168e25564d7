"""The database adapter: SQLModel tables, the engine and migrations, and the demo seed.

SQLite (an embedded file) by default; PostgreSQL through ``DATABASE_URL``.
"""
