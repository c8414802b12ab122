"""``python -m hello_app`` runs the hello app with granian; ``--dev`` with reload."""
import sys

from twotier_service.serving import main

from . import create_app

sys.exit(main(package="hello_app", title="hello app", prefix="HELLO", default_port=5000,
              factory=create_app))
