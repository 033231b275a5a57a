"""The sandbox: the demo and the fake Graph API it runs against."""
