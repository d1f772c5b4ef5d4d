"""xAPI keeps no tables of its own: statements are messages in the one outbox (``core.outbox``,
topic ``xapi.statement``); see :mod:`xapi.outbox`."""
