"""xAPI: each read, quiz attempt, acknowledgement and completion, sent to a Learning Record Store."""
