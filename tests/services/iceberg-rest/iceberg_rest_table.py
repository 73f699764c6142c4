"""pyiceberg side of tests/iceberg.rs for a REST catalog: the SQL catalog script
(tests/services/python/iceberg_table.py: create, read, append, inspect; same arguments and JSON
answers) run with pyiceberg's RestCatalog in place of its SqlCatalog, so both catalogs are
exercised by the same table code.

usage: iceberg_rest_table.py <catalog-uri http://...> <warehouse> <table> <command> [args]
The OAuth2 client credential, if the server requires one, is in SPILLWAY_TEST_ICEBERG_REST_CREDENTIAL.
"""
import os
import runpy
import sys

import pyiceberg.catalog.sql
from pyiceberg.catalog.rest import RestCatalog

SQL_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "iceberg_table.py")


def rest_catalog(name, **properties):
    """Takes SqlCatalog's arguments (the uri is the REST server's), makes a RestCatalog."""
    credential = os.environ.get("SPILLWAY_TEST_ICEBERG_REST_CREDENTIAL")
    if credential:
        properties["credential"] = credential
    return RestCatalog(name, **properties)


pyiceberg.catalog.sql.SqlCatalog = rest_catalog
sys.argv[0] = SQL_SCRIPT
runpy.run_path(SQL_SCRIPT, run_name="__main__")
