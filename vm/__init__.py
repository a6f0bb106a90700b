"""Harness for the portable-walkthrough suite: machines, backends, box and image builders."""
