"""MuJoCo stand-in robots: scripted experts, dataset collection and the wire-protocol sim server."""
