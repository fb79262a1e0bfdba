"""What is kept on disk: state, history, the service record, status.json."""
