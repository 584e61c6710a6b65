"""The Dash app over stored runs (see dashboards.app)."""
