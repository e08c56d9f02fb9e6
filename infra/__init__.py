"""The secure-export Pulumi program (`main: infra/` in Pulumi.yaml) and its offline plan."""
