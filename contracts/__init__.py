"""Warmi's contracts: the events services publish and the RPC shapes they accept.

Everything that crosses a service boundary is described here, once, so that a
producer and its consumers cannot drift apart.
"""
