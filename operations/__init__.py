"""Running Countersign for real: backups that restore anywhere, and the database roles."""
