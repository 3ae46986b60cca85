"""Jobs: the record, its store and queue, the service that holds the business rules, and the worker."""
