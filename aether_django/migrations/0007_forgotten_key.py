# The tombstones of the data keys forget() erased (subject as SHA-256, key id): the
# projection runner refuses to commit a batch that opened values with one of them.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("aether_django", "0006_data_subject"),
    ]

    operations = [
        migrations.CreateModel(
            name="ForgottenKey",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("subject_sha256", models.CharField(max_length=64)),
                ("kid", models.CharField(max_length=64)),
                ("forgotten_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "ordering": ["forgotten_at", "id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("subject_sha256", "kid"), name="aether_forgotten_key_unique"
                    )
                ],
            },
        ),
    ]
