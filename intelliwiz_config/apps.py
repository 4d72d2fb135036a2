"""The admin's app config, which makes intelliwiz_config.admin_site's site the default one.

Kept apart from the site: INSTALLED_APPS imports this module before any model may be loaded.
"""

from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    default_site = "intelliwiz_config.admin_site.SuperuserAdminSite"
