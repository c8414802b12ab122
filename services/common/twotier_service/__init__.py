"""Plumbing shared by the Python services (storage_api, app_api, hello_app).

``jsonapi``: every error as a JSON body, the health probes. ``serving``: how ``python -m <package>``
runs (granian through the ``rsgi`` bridge in production, ``devserver``'s reload with ``--dev``).

One copy for all services: each image is built with ``services/`` as its context and copies this
package to ``/app/twotier_service`` next to its own package; local processes and tests put
``services/common`` on the Python path.
"""
