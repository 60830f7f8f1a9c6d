"""The fleet console: a server-rendered web application for IT staff on the hub's database.

It reads the hub's PostgreSQL and acts on devices only through the fleet functions in
``scanfleet.provisioning`` (claims, revocation, config push, remote commands).
"""
