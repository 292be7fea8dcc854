"""Controllers: the loop that receives observations over ZeroMQ, steps a Session and sends actions.

Board-side package: standard library, numpy and pyzmq only (Python 3.10); never torch, mujoco or gymnasium.
"""
