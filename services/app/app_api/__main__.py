"""``python -m app_api`` runs the application API with granian; ``--dev`` with reload."""
import sys

from twotier_service.serving import main

from . import create_app

sys.exit(main(package="app_api", title="application API", prefix="API", default_port=5001,
              factory=create_app))
