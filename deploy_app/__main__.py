"""``python deploy_app -i INPUT -o OUTPUT -m MODEL``: runs the MOTFM DICOM application (see app.py)."""

import logging
import sys

from app import MotfmApp
from operators.series_writer import RunFailures

if __name__ == "__main__":
    try:
        MotfmApp().run()
    except (RunFailures, ValueError, FileNotFoundError) as e:
        logging.getLogger("motfm").error(str(e))
        sys.exit(1)
