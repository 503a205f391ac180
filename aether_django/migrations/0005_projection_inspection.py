# The admin's entry for the projections page: no table (managed=False), no permissions.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("aether_django", "0004_projections"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProjectionInspection",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
            ],
            options={
                "verbose_name": "projection",
                "verbose_name_plural": "projections",
                "managed": False,
                "default_permissions": (),
            },
        ),
    ]
