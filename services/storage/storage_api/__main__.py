"""``python -m storage_api`` runs the storage API with gunicorn; ``--dev`` with reload."""
import sys

from . import create_app
from twotier_service.serving import main

sys.exit(main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
              factory=create_app))
