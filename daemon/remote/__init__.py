"""The fleet's hold on a terminal over the publisher's connection: the control
channel, pushed configuration, commands, health reports, enrollment and claims.
"""
