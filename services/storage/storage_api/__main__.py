"""``python -m storage_api`` runs the storage API with granian; ``--dev`` with reload."""
import sys

from twotier_service.serving import main

from . import create_app

sys.exit(main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
              factory=create_app))
