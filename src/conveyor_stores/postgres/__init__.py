"""The PostgreSQL store (in progress: so far the connection layer, ``_wire``)."""
