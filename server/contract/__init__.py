"""The contract: docs/asyncapi.yaml and docs/openapi.yaml generated from the code (``healthmate docs``)."""
