"""The newest migration's revision, known without loading Alembic.

Every command (and ``serve``) migrates first; Alembic and its script directory cost about
0.4 s of CPU to learn that nothing is pending. A database already at this revision skips
them (``cli.py``); ``tests/test_migrations.py`` holds this to Alembic's own head, so a new
migration without it here fails the tests.
"""

HEAD_REVISION = "a57a200465e5"
