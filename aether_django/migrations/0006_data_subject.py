# The admin's entry for forgetting a data subject: no table (managed=False), and the
# one permission aether_django.forget_subject (the admin page and the API endpoint).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("aether_django", "0005_projection_inspection"),
    ]

    operations = [
        migrations.CreateModel(
            name="DataSubject",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
            ],
            options={
                "verbose_name": "data subject",
                "verbose_name_plural": "forget a data subject",
                "managed": False,
                "default_permissions": (),
                "permissions": [
                    ("forget_subject", "Can forget a data subject (erase its personal data)")
                ],
            },
        ),
    ]
