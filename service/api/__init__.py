"""The HTTP edge: thin routers over ``service.serving.SearchService``."""
