"""``python deploy_app -i INPUT -o OUTPUT -m MODEL``: runs the MOTFM DICOM application (see app.py); exit status 1
when something could not be processed (the run report says what: motfm_deploy/report.py)."""

import logging
import sys

from app import RUN_ERRORS, MotfmApp

if __name__ == "__main__":
    try:
        MotfmApp().run()
    except RUN_ERRORS as e:
        logging.getLogger("motfm").error(str(e))
        sys.exit(1)
