"""Token ditching inside other training libraries (each module needs its library installed)."""
