"""The application gunicorn serves (``gunicorn wsgi:app``), built once when a worker imports it.

Kept apart from ``app.py`` so that importing the factory (tests, migrations, ``flask``) builds no
app as a side effect.
"""

from app import create_app

app = create_app()
