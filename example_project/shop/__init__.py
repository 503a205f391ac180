"""The example app: a page that reads and appends events of one actor."""
