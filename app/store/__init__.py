"""The database: ORM models, engines and sessions, migrations, and the repository
functions that hold the SQL the services share."""
