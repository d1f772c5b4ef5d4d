"""What the servers the tests start in a thread of their own share."""

# How often serve_forever() looks for a request to stop: shutdown() waits for its next look, which
# by default is up to half a second away, at the end of every test that starts a server.
QUICK_STOP = 0.05
