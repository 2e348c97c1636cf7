"""Test support: real peers and processes that tests start on loopback."""
