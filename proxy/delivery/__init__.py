"""Delivery: the queue, the outbox and the senders that take beacons to Google."""
