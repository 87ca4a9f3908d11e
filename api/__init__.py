"""The Moodle-facing HTTP side: signed job ingest and job/settings endpoints; writes events, reads Postgres."""
