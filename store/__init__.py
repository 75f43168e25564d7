"""The database adapter: SQLModel tables, the engine factory and the queries the API reads.

SQLite (an embedded file) by default; PostgreSQL through ``DATABASE_URL``.
"""
