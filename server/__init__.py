"""Health Mate server: aiohttp + python-socketio application wiring the domain packages."""
