"""One router per resource; handlers validate and call the service with keyword arguments."""
