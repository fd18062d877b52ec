"""The models scribe ships (`catalogue`) and putting a split one back together (`assembly`)."""
