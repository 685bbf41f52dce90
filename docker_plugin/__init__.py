"""Docker volume plugin: the cvmfs and eos drivers (Flask app served by gunicorn)."""
