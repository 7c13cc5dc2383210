"""The gateway's routes, one module per API family (NIM, Cohere, TEI/Infinity, service)."""
