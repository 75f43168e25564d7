"""Workflow definitions. Importing this package does no I/O and loads no database code."""

from workflows.order_process import OrderProcessWorkflow

__all__ = ["OrderProcessWorkflow"]
